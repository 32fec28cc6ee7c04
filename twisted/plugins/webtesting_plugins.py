# twistd plugin registrations. Each maker is lazy: nothing in webtesting is
# imported until `twistd <name>` is actually run.
from twisted.application.reactors import Reactor
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

# `twistd --reactor webtesting-epoll`: Twisted's epoll reactor with a cheaper
# way into each ready socket's log context (webtesting/reactor.py); the
# shipped units use it.
webtesting_epoll = Reactor(
    "webtesting-epoll",
    "webtesting.reactor",
    "epoll, setting each ready socket's log context for less (Linux; WebTesting's daemons)",
)
