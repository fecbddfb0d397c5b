#!/usr/bin/env bash
# Install the Debian packages the tests need, if missing, and make sure Redis answers.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v redis-server >/dev/null || need+=(redis-server)
command -v pg_isready >/dev/null || need+=(postgresql)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
fc-list 2>/dev/null | grep -qi "noto sans cjk" || need+=(fonts-noto-cjk)
# Real third-party peers for the ingest tests: GStreamer's RTSP server and webrtcbin,
# driven from Debian's own Python (python3-gst-1.0), and gst-launch for clips.
for pkg in gstreamer1.0-tools gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 \
           gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
           gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice gir1.2-gst-plugins-bad-1.0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "apt: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
redis_up() { timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6379 && printf "PING\r\n" >&3 && head -c 5 <&3' 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  echo "redis: starting a local server on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/gridhub-ci-redis.log
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "redis: could not start it" >&2; exit 1; }
fi
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  echo "postgresql: starting the local cluster on 127.0.0.1:5432"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if ! command -v pg_ctlcluster >/dev/null || ! pg_lsclusters -h 2>/dev/null | grep -q .; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  $SUDO service postgresql start >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  pg_up || { echo "postgresql: could not start it" >&2; exit 1; }
fi
# The tests create and drop their own databases as the postgres user over TCP.
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1; then
  echo "postgresql: the tests need trust (or GRIDHUB_TEST_PG_URL) for postgres@127.0.0.1" >&2
fi
