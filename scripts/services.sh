#!/usr/bin/env bash
# Start each local service the tests need that is not answering on its port.
# The commands are this machine's own (see the machine page); on a laptop without
# a server the start is skipped, and the tests that need it skip (outside CI).
set -u

answers() { (echo > "/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1; }

wait_for() {  # name port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    answers "$2" && return 0
    sleep 0.1
  done
  echo "services: $1 did not answer on port $2 after $3 s" >&2
  return 1
}

start() {  # name port binary seconds command...
  local name=$1 port=$2 binary=$3 seconds=$4
  shift 4
  if answers "$port"; then
    return 0
  fi
  if ! command -v "$binary" >/dev/null 2>&1; then
    echo "services: $name is not installed here; its tests will skip (and fail in CI)" >&2
    return 0
  fi
  echo "services: starting $name"
  "$@" >/dev/null 2>&1 || true
  wait_for "$name" "$port" "$seconds"
}

status=0
start NATS 4222 nats-server 20 start-stop-daemon --start --oknodo --background \
  --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
  -l /var/log/nats-server.log || status=1
start Redis 6379 redis-server 20 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
  --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || status=1
start RabbitMQ 5672 rabbitmq-server 90 rabbitmq-server -detached || status=1
start PostgreSQL 5432 pg_ctlcluster 30 bash -c \
  'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || status=1
exit $status
