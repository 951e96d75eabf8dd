#!/usr/bin/env bash
# Start Redis and RabbitMQ on 127.0.0.1 if they are not already answering; wait until they do.
# Sourced or run by scripts/test.sh (and so by .ci/run). Never assumes they are up.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 6379; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "services: starting redis-server"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log \
      || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  else
    echo "services: redis-server not installed; Redis tests will be skipped"
  fi
fi
if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "services: starting rabbitmq-server"
    rabbitmq-server -detached || true
  else
    echo "services: rabbitmq-server not installed; RabbitMQ tests will be skipped"
  fi
fi
for i in $(seq 1 90); do
  if port_open 6379 && port_open 5672; then break; fi
  sleep 1
done
port_open 6379 && echo "services: redis up" || echo "services: redis DOWN"
port_open 5672 && echo "services: rabbitmq up" || echo "services: rabbitmq DOWN"
