#!/bin/sh
# micado worker bootstrap, written by micado's cloud-init user data.
# It runs once, as root, on a stock Debian or Ubuntu image:
#   1. fetches the micado binary from the manager over TLS (trusting only
#      the manager's CA from the user data) and refuses it unless its
#      SHA-256 is the one in the user data;
#   2. installs Docker (and curl) from the distribution's packages when
#      they are missing;
#   3. exchanges the single-use join token for the cluster key;
#   4. starts the worker under systemd.
# Every step logs to the console (cloud-init-output.log) and the journal.
set -eu
umask 077
. /etc/micado/join.env

log() {
	echo "micado-bootstrap: $*"
	logger -t micado-bootstrap -- "$*" 2>/dev/null || true
}
fail() {
	log "FAILED: $*"
	exit 1
}

# Docker and curl: from the distribution's packages when missing.
missing=""
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
if [ -n "$missing" ]; then
	command -v apt-get >/dev/null 2>&1 ||
		fail "needs$missing and this image has no apt-get: use a Debian or Ubuntu image, or one with Docker and curl installed"
	log "installing$missing from the distribution's packages"
	export DEBIAN_FRONTEND=noninteractive
	n=0
	until apt-get -o DPkg::Lock::Timeout=300 update -q; do
		n=$((n + 1))
		[ "$n" -lt 5 ] || fail "apt-get update failed $n times"
		sleep 5
	done
	n=0
	until apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $missing; do
		n=$((n + 1))
		[ "$n" -lt 3 ] || fail "apt-get install$missing failed $n times"
		sleep 5
	done
fi

# call METHOD PATH OUT: one request to the manager with the join token;
# transient failures (connection refused, 5xx) are retried.
call() {
	code=$(curl --silent --show-error --cacert /etc/micado/manager-ca.pem \
		--retry 20 --retry-connrefused --retry-delay 3 --max-time 300 \
		-X "$1" -H "Authorization: Bearer $MICADO_JOIN_TOKEN" \
		-o "$3" -w '%{http_code}' "$MICADO_JOIN_URL$2") ||
		fail "cannot reach the manager at $MICADO_JOIN_URL$2"
	[ "$code" = 200 ] || fail "the manager refused $1 $2 ($code): $(head -c 500 "$3")"
}

# The binary: verified before anything runs it.
bin_dir=$(dirname "$MICADO_BINARY")
mkdir -p "$bin_dir"
tmp=$(mktemp "$bin_dir/.micado.XXXXXX")
trap 'rm -f "$tmp"' EXIT
log "fetching the micado binary from $MICADO_JOIN_URL"
call GET /v1/join/micado "$tmp"
got=$(sha256sum "$tmp" | cut -d' ' -f1)
[ "$got" = "$MICADO_BINARY_SHA256" ] ||
	fail "the micado binary from the manager has SHA-256 $got, not $MICADO_BINARY_SHA256: refused"
chmod 0755 "$tmp"
mv -f "$tmp" "$MICADO_BINARY"

systemctl enable --now docker.service || fail "cannot start Docker"

# The join token, spent for the cluster key (and registry credentials):
# a tar archive of files of mode 0600, unpacked into /etc/micado.
log "exchanging the join token for the cluster key"
call POST /v1/join /etc/micado/join.tar
tar -x -f /etc/micado/join.tar -C /etc/micado --no-same-owner --no-same-permissions ||
	fail "the manager's answer to the join is not a tar archive"
rm -f /etc/micado/join.tar /etc/micado/join.env
[ -s /etc/micado/cluster.key ] || fail "the manager's answer holds no cluster key"

systemctl daemon-reload
systemctl enable --now micado-worker.service || fail "cannot start micado-worker.service"
log "micado worker started"
