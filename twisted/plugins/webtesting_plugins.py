# twistd plugin registrations. Each maker is lazy: nothing in webtesting is
# imported until `twistd <name>` is actually run.
from twisted.application.service import ServiceMaker

webtesting_web = ServiceMaker(
    "webtesting-web",
    "webtesting.web.tap",
    "WebTesting web server: pages, registry HTTP API, browser WebSocket",
    "webtesting-web",
)
webtesting_agent = ServiceMaker(
    "webtesting-agent",
    "webtesting.agent.tap",
    "WebTesting agent: runs on a bot host and relays one bot deployment",
    "webtesting-agent",
)
webtesting_wxsim = ServiceMaker(
    "webtesting-wxsim",
    "webtesting.wxsim.tap",
    "WebTesting reference bot: a WxService that writes user state like a real bot",
    "webtesting-wxsim",
)
