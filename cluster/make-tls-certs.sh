#!/usr/bin/env bash
# Make a private CA and one certificate for the scheduler, the workers and the driver
# (client), for Dask's TLS. Needs openssl.
#
#   cluster/make-tls-certs.sh OUTDIR SCHEDULER_HOST [MORE_HOSTS...]
#
# Writes OUTDIR/ca.pem, and {scheduler,worker,client}.pem with their -key.pem. Copy ca.pem
# and the matching pair to each host (keep the keys private: mode 600). The hosts go in
# the certificates' subjectAltName (names or IPs); 127.0.0.1 and localhost are added.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 OUTDIR SCHEDULER_HOST [MORE_HOSTS...]" >&2
    exit 2
fi
OUT="$1"; shift
mkdir -p "$OUT"
umask 077
SAN="DNS:localhost,IP:127.0.0.1"
for h in "$@"; do
    if [[ "$h" =~ ^[0-9.]+$ ]]; then SAN="$SAN,IP:$h"; else SAN="$SAN,DNS:$h"; fi
done
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=distetl-dask-ca" \
    -keyout "$OUT/ca-key.pem" -out "$OUT/ca.pem" 2>/dev/null
for role in scheduler worker client; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=distetl-$role" \
        -keyout "$OUT/$role-key.pem" -out "$OUT/$role.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$SAN" > "$OUT/$role.ext"
    openssl x509 -req -in "$OUT/$role.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca-key.pem" \
        -CAcreateserial -days 825 -extfile "$OUT/$role.ext" -out "$OUT/$role.pem" 2>/dev/null
    rm -f "$OUT/$role.csr" "$OUT/$role.ext"
done
chmod 644 "$OUT/ca.pem" "$OUT"/scheduler.pem "$OUT"/worker.pem "$OUT"/client.pem
echo "wrote $OUT: ca.pem, scheduler/worker/client .pem and -key.pem"
