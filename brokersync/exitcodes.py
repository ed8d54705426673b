"""Named process exit codes, shared by every component and by the service files."""

RET_OK = 0  # clean stop (including SIGINT/SIGTERM/CTRL_BREAK)
RET_ERROR = 1  # unexpected error; the supervisor restarts the component
RET_USAGE = 2  # bad command line
RET_CONNECT = 3  # database connection failed and the command does not retry
RET_MIGRATE = 4  # schema migration failed
RET_UNHEALTHY = 5  # `brokersync status`: something needs attention
RET_FETCH_FAILED = 6  # `brokersync producer --once`: at least one fetch failed
RET_CONFIG = 78  # EX_CONFIG: configuration error; services must not restart on it
