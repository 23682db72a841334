#!/usr/bin/env bash
# Start (installing if missing) the PostgreSQL and RabbitMQ servers the tests talk to, then wait for them.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! pg_up; then
  if ! ls /etc/postgresql >/dev/null 2>&1; then
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 60); do pg_up && break; sleep 1; done
fi
pg_up || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null

if ! rabbit_up; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
  fi
  as_root rabbitmq-server -detached || true
  as_root rabbitmqctl await_startup --timeout 120
  for _ in $(seq 1 60); do rabbit_up && break; sleep 1; done
fi
rabbit_up || { echo "RabbitMQ did not start on 127.0.0.1:5672" >&2; exit 1; }
# Debian's Chromium for the console's browser tests (Playwright drives it; no browser download)
if [ ! -x /usr/bin/chromium ]; then
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
echo "services: PostgreSQL and RabbitMQ are up; chromium at /usr/bin/chromium"
