#!/usr/bin/env bash
# Builds the image the examples name, busybox:latest, FROM scratch from
# Debian's busybox-static (there is no registry to pull from), for nodes
# running the Docker runtime.
set -euo pipefail
tag=${1:-busybox:latest}
busybox=${BUSYBOX:-/bin/busybox}
if ! { ldd "$busybox" 2>&1 || true; } | grep -q "not a dynamic"; then
  echo "build-busybox-image: $busybox is not a static busybox; apt-get install busybox-static" >&2
  exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp "$busybox" "$dir/busybox"
cat > "$dir/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh"]
DOCKERFILE
docker build -q -t "$tag" "$dir" >/dev/null
echo "built $tag"
