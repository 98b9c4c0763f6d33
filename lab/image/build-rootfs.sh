#!/usr/bin/env bash
# Builds the lab's PostgreSQL 15 root filesystem from this host's own binaries, so the
# lab needs no registry pull: the server, psql and pg_restore, every library ldd names,
# the C.utf8 locale, time zones and a small entrypoint. Writes a tar for `podman import`.
set -o nounset -o pipefail -o errexit

out=${1:?usage: build-rootfs.sh OUT.tar}
pg=${PG_LIBDIR:-/usr/lib/postgresql/15}
[ -x "$pg/bin/postgres" ] || { echo "no PostgreSQL 15 server at $pg (apt-get install postgresql-15)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
here=$(cd "$(dirname "$0")" && pwd)

copy() {  # copy a path into the root, keeping its location; follow symlinks to the file
  local src=$1
  mkdir -p "$root$(dirname "$src")"
  cp -a "$src" "$root$src"
  if [ -L "$src" ]; then
    local real
    real=$(readlink -f "$src")
    mkdir -p "$root$(dirname "$real")"
    cp -a "$real" "$root$real"
  fi
}

# Merged /usr, as on Debian 12: /bin, /lib, /lib64 and /sbin are links into /usr.
mkdir -p "$root"/usr/{bin,lib,lib64,sbin}
for d in bin lib lib64 sbin; do ln -s "usr/$d" "$root/$d"; done
mkdir -p "$root"/{etc,tmp,var/lib/postgresql,var/run/postgresql,usr/local/bin,usr/share,usr/lib/locale}
chmod 1777 "$root/tmp"
mkdir -p "$root$(dirname "$pg")"
cp -a "$pg" "$root$pg"
# JIT pulls in libLLVM (over 100 MB) and the lab does not need it: jit is off in the server.
rm -rf "$root$pg"/lib/llvmjit* "$root$pg"/lib/bitcode
cp -a /usr/share/postgresql "$root/usr/share/"
cp -a /usr/share/zoneinfo "$root/usr/share/"
cp -a /usr/lib/locale/C.utf8 "$root/usr/lib/locale/"

# Every shared library the PostgreSQL binaries, modules and the shell tools need.
tools="/bin/sh /bin/dash /bin/mkdir /bin/chmod /bin/sleep /bin/cat /bin/ls /bin/rm /usr/bin/env"
for t in $tools; do copy "$t"; done
{ ldd "$pg"/bin/* $(ls "$root$pg"/lib/*.so | sed "s|^$root||") $tools 2>/dev/null || true; } \
  | awk '/=>/ {print $3} !/=>/ && /^\t\// {print $1}' | sort -u \
  | while read -r lib; do [ -e "$lib" ] && copy "$lib"; done

for b in "$pg"/bin/*; do ln -sf "$b" "$root/usr/local/bin/$(basename "$b")"; done

cat > "$root/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh
PW
cat > "$root/etc/group" <<'GR'
root:x:0:
postgres:x:999:
GR
install -m 0755 "$here/entrypoint.sh" "$root/usr/local/bin/entrypoint.sh"
chown -R 999:999 "$root/var/lib/postgresql" "$root/var/run/postgresql"

tar -C "$root" -cf "$out" .
