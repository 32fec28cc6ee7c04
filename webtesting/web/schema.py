"""
The registry database's tables of services, users and login sessions, for
MySQL/MariaDB and for SQLite, in one place (the history's and the saved test
cases' tables live with their code: webtesting.web.history, .testruns).
etc/schema.sql holds the MySQL ones too; a test keeps it in step.
"""

def dialect_sql(dialect_name: str, statement: str) -> str:
    """A statement written with %s placeholders (pymysql's style), as C{dialect_name} wants it (sqlite3: ?)."""
    return statement if dialect_name == "mysql" else statement.replace("%s", "?")


SERVICE_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_service_info` (
  `id` int(11) NOT NULL AUTO_INCREMENT COMMENT 'the serviceId',
  `redisCluster` varchar(1024) DEFAULT NULL COMMENT 'JSON [{"host":..,"port":..}] of all masters',
  `mysqlAddr` varchar(64) DEFAULT NULL COMMENT 'the bot''s MySQL: tag and topic dictionaries',
  `mysqlPort` int(11) DEFAULT '3306',
  `mysqlUser` varchar(64) DEFAULT NULL,
  `mysqlPwd` varchar(64) DEFAULT NULL,
  `mysqlDbname` varchar(64) DEFAULT NULL,
  `wxServiceAddr` varchar(64) DEFAULT NULL COMMENT 'e.g. ws://127.0.0.1:1443/5.00034',
  `agentAddr` varchar(64) DEFAULT NULL COMMENT 'e.g. ws://127.0.0.1:2021/WebTesting/Agent',
  `allowedAppids` varchar(1024) DEFAULT NULL COMMENT 'JSON ["1.00002","1.00003"]',
  `description` varchar(1024) DEFAULT NULL,
  `allowStateWrites` tinyint(1) NOT NULL DEFAULT '0' COMMENT 'testers may write users'' state (test cases'' given)',
  `status` int(11) DEFAULT '1' COMMENT '1 ok, 0 down; written by the web server',
  `msg` varchar(256) DEFAULT 'ok' COMMENT 'why the service is down',
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

SERVICE_SCHEMA_SQLITE = """\
CREATE TABLE IF NOT EXISTS tb_service_info (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  redisCluster TEXT,
  mysqlAddr TEXT,
  mysqlPort INTEGER DEFAULT 3306,
  mysqlUser TEXT,
  mysqlPwd TEXT,
  mysqlDbname TEXT,
  wxServiceAddr TEXT,
  agentAddr TEXT,
  allowedAppids TEXT,
  description TEXT,
  allowStateWrites INTEGER NOT NULL DEFAULT 0,
  status INTEGER DEFAULT 1,
  msg TEXT DEFAULT 'ok'
)
"""

USER_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_user` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `username` varchar(64) NOT NULL,
  `passwordHash` varchar(255) NOT NULL COMMENT 'scrypt$n$r$p$salt$hash',
  `role` varchar(16) NOT NULL COMMENT 'tester or admin',
  `createdAt` bigint NOT NULL COMMENT 'Unix seconds',
  PRIMARY KEY (`id`),
  UNIQUE KEY `username` (`username`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

USER_SCHEMA_SQLITE = """\
CREATE TABLE IF NOT EXISTS tb_user (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  username TEXT NOT NULL UNIQUE,
  passwordHash TEXT NOT NULL,
  role TEXT NOT NULL,
  createdAt INTEGER NOT NULL
)
"""

SESSION_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_session` (
  `id` char(64) NOT NULL COMMENT 'SHA-256 of the cookie token, hex',
  `publicId` char(16) NOT NULL COMMENT 'names the session in lists',
  `username` varchar(64) NOT NULL,
  `address` varchar(64) NOT NULL DEFAULT '',
  `userAgent` varchar(256) NOT NULL DEFAULT '',
  `createdAt` bigint NOT NULL COMMENT 'Unix seconds',
  `lastSeen` bigint NOT NULL COMMENT 'Unix seconds',
  `expiresAt` bigint NOT NULL COMMENT 'Unix seconds',
  PRIMARY KEY (`id`),
  UNIQUE KEY `publicId` (`publicId`),
  KEY `username` (`username`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

SESSION_SCHEMA_SQLITE = """\
CREATE TABLE IF NOT EXISTS tb_session (
  id TEXT PRIMARY KEY,
  publicId TEXT NOT NULL UNIQUE,
  username TEXT NOT NULL,
  address TEXT NOT NULL DEFAULT '',
  userAgent TEXT NOT NULL DEFAULT '',
  createdAt INTEGER NOT NULL,
  lastSeen INTEGER NOT NULL,
  expiresAt INTEGER NOT NULL
)
"""
SESSION_INDEX_SQLITE = "CREATE INDEX IF NOT EXISTS tb_session_username ON tb_session (username)"

AUDIT_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_audit` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  `at` bigint NOT NULL COMMENT 'Unix milliseconds',
  `actor` varchar(64) NOT NULL COMMENT 'the account, or cli:<os user> for webtesting-account',
  `address` varchar(64) NOT NULL DEFAULT '' COMMENT 'where the change came from',
  `action` varchar(32) NOT NULL,
  `kind` varchar(16) NOT NULL COMMENT 'service, user or session',
  `target` varchar(64) NOT NULL COMMENT 'the serviceId, username or session id changed',
  `serviceId` int(11) DEFAULT NULL,
  `beforeValues` text COMMENT 'JSON: the changed fields before (passwords masked)',
  `afterValues` text COMMENT 'JSON: the changed fields after (passwords masked)',
  PRIMARY KEY (`id`),
  KEY `serviceId` (`serviceId`, `id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

AUDIT_SCHEMA_SQLITE = """\
CREATE TABLE IF NOT EXISTS tb_audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at INTEGER NOT NULL,
  actor TEXT NOT NULL,
  address TEXT NOT NULL DEFAULT '',
  action TEXT NOT NULL,
  kind TEXT NOT NULL,
  target TEXT NOT NULL,
  serviceId INTEGER,
  beforeValues TEXT,
  afterValues TEXT
)
"""
AUDIT_INDEX_SQLITE = "CREATE INDEX IF NOT EXISTS tb_audit_service ON tb_audit (serviceId, id)"

HEALTH_EVENT_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_health_event` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  `serviceId` int(11) NOT NULL,
  `at` bigint NOT NULL COMMENT 'Unix milliseconds the health changed',
  `status` int(11) NOT NULL COMMENT '1 up, 0 down',
  `code` varchar(32) NOT NULL DEFAULT '' COMMENT 'the reason code (docs/protocol.md)',
  `msg` varchar(256) NOT NULL DEFAULT '',
  PRIMARY KEY (`id`),
  KEY `serviceAt` (`serviceId`, `at`),
  KEY `at` (`at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

HEALTH_SAMPLE_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_health_sample` (
  `serviceId` int(11) NOT NULL,
  `at` bigint NOT NULL COMMENT 'Unix milliseconds, the end of the sampled interval',
  `latencyMs` double NOT NULL COMMENT 'median round trip web -> agent -> web (WebSocket ping) in the interval',
  PRIMARY KEY (`serviceId`, `at`),
  KEY `at` (`at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

HEALTH_SCHEMA_SQLITE = (
    """\
CREATE TABLE IF NOT EXISTS tb_health_event (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  serviceId INTEGER NOT NULL,
  at INTEGER NOT NULL,
  status INTEGER NOT NULL,
  code TEXT NOT NULL DEFAULT '',
  msg TEXT NOT NULL DEFAULT ''
)
""",
    "CREATE INDEX IF NOT EXISTS tb_health_event_service ON tb_health_event (serviceId, at)",
    "CREATE INDEX IF NOT EXISTS tb_health_event_at ON tb_health_event (at)",
    """\
CREATE TABLE IF NOT EXISTS tb_health_sample (
  serviceId INTEGER NOT NULL,
  at INTEGER NOT NULL,
  latencyMs REAL NOT NULL,
  PRIMARY KEY (serviceId, at)
)
""",
    "CREATE INDEX IF NOT EXISTS tb_health_sample_at ON tb_health_sample (at)",
)
