-- The registry table (MySQL/MariaDB). The web server creates it when missing;
-- this file is for people who prefer to create it themselves:
--   mysql webtesting < etc/schema.sql
-- Keep it identical to MYSQL_SCHEMA in webtesting/web/registry.py (a test checks).
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
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4; written by the web server',
  `msg` varchar(256) DEFAULT 'ok' COMMENT 'why the service is down',
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Tester and admin accounts (webtesting-account manages them).
CREATE TABLE IF NOT EXISTS `tb_user` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `username` varchar(64) NOT NULL,
  `passwordHash` varchar(255) NOT NULL COMMENT 'scrypt$n$r$p$salt$hash',
  `role` varchar(16) NOT NULL COMMENT 'tester or admin',
  `createdAt` bigint NOT NULL COMMENT 'Unix seconds',
  PRIMARY KEY (`id`),
  UNIQUE KEY `username` (`username`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Login sessions: one row per logged-in browser, keyed by the SHA-256 of its cookie token.
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
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Conversation history (webtesting/web/history.py).
CREATE TABLE IF NOT EXISTS `tb_history` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  `serviceId` int NOT NULL,
  `appid` varchar(32) NOT NULL,
  `uname` varchar(64) NOT NULL,
  `account` varchar(64) NOT NULL COMMENT 'the WebTesting user who was logged in',
  `turns` int NOT NULL COMMENT 'how many of the events are chats (say)',
  `at` bigint NOT NULL COMMENT 'the last event''s time, Unix epoch milliseconds',
  `events` mediumtext NOT NULL COMMENT 'JSON [[kind, at, body], ...] in order',
  PRIMARY KEY (`id`),
  KEY `botUser` (`serviceId`, `appid`, `uname`, `id`),
  KEY `account` (`account`, `id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Saved test cases (webtesting/web/testruns.py).
CREATE TABLE IF NOT EXISTS `tb_case` (
  `id` int NOT NULL AUTO_INCREMENT,
  `owner` varchar(64) NOT NULL COMMENT 'the account that saved it',
  `name` varchar(256) NOT NULL,
  `shared` tinyint(1) NOT NULL DEFAULT '0' COMMENT 'every account sees it',
  `yaml` mediumtext NOT NULL,
  `createdAt` bigint NOT NULL COMMENT 'Unix seconds',
  `updatedAt` bigint NOT NULL COMMENT 'Unix seconds',
  PRIMARY KEY (`id`),
  KEY `owner` (`owner`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The audit trail (webtesting/web/audit.py): who changed the registry, written with each change.
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
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Each service's health changes and latency samples (webtesting/web/healthhistory.py).
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
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `tb_health_sample` (
  `serviceId` int(11) NOT NULL,
  `at` bigint NOT NULL COMMENT 'Unix milliseconds, the end of the sampled interval',
  `latencyMs` double NOT NULL COMMENT 'median round trip web -> agent -> web (WebSocket ping) in the interval',
  PRIMARY KEY (`serviceId`, `at`),
  KEY `at` (`at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
