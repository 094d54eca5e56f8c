# Shared by the mtls-proxy benchmarks (`run`, `instructions`, `ab`,
# `rec-ab`, `pgo-build`): tools, CPU time readings, certificates and the
# configurations of the proxies (mtls-proxy, nginx, HAProxy) and the backend.
# Callers set HERE, ROOT, CARGO_TARGET_DIR and PORT_BASE, and W (the work
# directory) before writing certificates or configurations.
# shellcheck shell=bash

log() { printf '# %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools --

APT_UPDATED=
apt_install() {
    if [[ -z $APT_UPDATED ]]; then
        apt-get update -qq >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_tools() {
    command -v nginx >/dev/null || apt_install nginx
    command -v haproxy >/dev/null || apt_install haproxy
    command -v openssl >/dev/null || apt_install openssl
    command -v curl >/dev/null || apt_install curl
    command -v taskset >/dev/null || apt_install util-linux
    command -v python3 >/dev/null || apt_install python3
    if ! command -v oha >/dev/null; then
        [[ -x $HOME/.cargo/bin/oha ]] || {
            log "installing oha (a few minutes)"
            cargo install oha --locked >&2
        }
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    oha --version >/dev/null || die "oha does not run"
    # `ab` brings its own binaries.
    [[ ${OWN_BINARIES:-} == 1 ]] && return
    # BUILD=pgo (the default) measures the profile-guided build that
    # `pgo-build` makes, BUILD=release the plain `cargo build --release`.
    case ${BUILD:=pgo} in
    pgo)
        [[ ${NO_BUILD:-} == 1 ]] || "$HERE/pgo-build" >&2
        PROXY_BIN="$CARGO_TARGET_DIR/pgo/release/mtls-proxy"
        BUILD_NAME="release build with PGO"
        ;;
    release)
        if [[ ${NO_BUILD:-} != 1 ]]; then
            log "building mtls-proxy (release)"
            (cd "$ROOT" && cargo build --release -q -p mtls-proxy) >&2
        fi
        PROXY_BIN="$CARGO_TARGET_DIR/release/mtls-proxy"
        BUILD_NAME="release build"
        ;;
    *) die "BUILD is '$BUILD'; use pgo or release" ;;
    esac
    [[ -x $PROXY_BIN ]] || die "no mtls-proxy binary at $PROXY_BIN (BUILD=$BUILD)"
}

# Fails unless every given loopback port is free, so that a server left
# over from another run cannot stand in for one this script starts.
ports_free() { # port...
    local port
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port is already in use; stop what listens there or set PORT_BASE"
        fi
    done
}

# Waits until something accepts TCP connections on a loopback port.
wait_port() {
    local port=$1 i
    for ((i = 0; i < 500; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.02
    done
    die "nothing listens on port $port"
}

# ------------------------------------------------------------ CPU time --

# Busy and idle jiffies of one core, from /proc/stat ("busy idle"; busy is
# user, nice, system, irq and softirq time).
core_jiffies() { # core
    awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat
}

# One line per thread of process PID: name, user ticks, system ticks.
thread_ticks() { # pid
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s\t%s\n' "$(cat "$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12 "\t" $13}')"
    done
}

# --------------------------------------------------------- certificates --

make_certs() {
    local d=$W/certs
    mkdir -p "$d"
    (
        cd "$d"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key
        openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=bench CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
        openssl ecparam -name prime256v1 -genkey -noout -out server.key
        openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
        printf '%s\n' "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
            "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 2 -sha256 -extfile server.ext -out server.pem
        openssl ecparam -name prime256v1 -genkey -noout -out client.key.sec1
        openssl pkcs8 -topk8 -nocrypt -in client.key.sec1 -out client.key
        openssl req -new -key client.key -subj "/CN=bench-client" -out client.csr
        printf '%s\n' "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth" \
            "subjectAltName=DNS:bench-client" >client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 2 -sha256 -extfile client.ext -out client.pem
    ) 2>/dev/null
    CA=$d/ca.pem
    CLIENT_CERT=$d/client.pem
    CLIENT_KEY=$d/client.key
}

# -------------------------------------------------------------- configs --

P_BACKEND=$PORT_BASE P_BACKEND_STATUS=$((PORT_BASE + 1))
P_A_HTTP=$((PORT_BASE + 10)) P_A_TLS=$((PORT_BASE + 11))
P_B_MTLS=$((PORT_BASE + 21))
P_C_MTLS=$((PORT_BASE + 31)) P_C_ADMIN=$((PORT_BASE + 32))
P_N_HTTP=$((PORT_BASE + 40)) P_N_TLS=$((PORT_BASE + 41))
P_N_MTLS=$((PORT_BASE + 42)) P_N_MTLS_REC=$((PORT_BASE + 43))
P_H_HTTP=$((PORT_BASE + 50)) P_H_TLS=$((PORT_BASE + 51)) P_H_MTLS=$((PORT_BASE + 52))
P_B_ADMIN=$((PORT_BASE + 22))

write_backend_conf() {
    mkdir -p "$W/backend/logs"
    cat >"$W/backend/nginx.conf" <<EOF
worker_processes 1;
pid $W/backend/nginx.pid;
error_log $W/backend/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $W/backend/tmp;
    server {
        listen 127.0.0.1:$P_BACKEND backlog=4096;
        location / { default_type text/plain; return 200 "ok"; }
    }
    # Connections the backend accepted tell how well each proxy reuses its
    # upstream connections.
    server {
        listen 127.0.0.1:$P_BACKEND_STATUS;
        location / { stub_status; }
    }
}
EOF
}

# mtls-proxy, three configurations: A (plain HTTP and TLS, no client
# certificates), B (client certificates required), C (B plus recording).
write_proxy_confs() {
    local common
    common=$(cat <<EOF
[log]
level = "warn"

[[certificates]]
cert = "$W/certs/server.pem"
key = "$W/certs/server.key"
EOF
)
    cat >"$W/proxy-a.toml" <<EOF
[server]
http = "127.0.0.1:$P_A_HTTP"
https = "127.0.0.1:$P_A_TLS"
$common

[[routes]]
name = "bench"
upstreams = ["http://127.0.0.1:$P_BACKEND"]
client_auth = "off"
EOF
    for g in b c; do
        # B's admin listener counts full and resumed handshakes, C's how
        # many records were written and dropped; both sit outside the
        # proxied path.
        local port=$P_B_MTLS admin="admin = \"127.0.0.1:$P_B_ADMIN\""
        [[ $g == c ]] && port=$P_C_MTLS admin="admin = \"127.0.0.1:$P_C_ADMIN\""
        cat >"$W/proxy-$g.toml" <<EOF
[server]
https = "127.0.0.1:$port"
$admin
$common

[[routes]]
name = "bench"
upstreams = ["http://127.0.0.1:$P_BACKEND"]
client_auth = "required"
client_ca = ["$CA"]
EOF
    done
    cat >>"$W/proxy-c.toml" <<EOF

[store]
path = "$W/records.db"
EOF
}

# One nginx with every scenario on its own port. The recording analogue is
# an access log carrying the request and response headers, buffered like
# mtls-proxy's batched writer.
write_nginx_conf() {
    mkdir -p "$W/front/logs"
    # proxy_set_header is inherited only by levels that set none, so every
    # location repeats the whole list (Connection "" keeps upstreams alive).
    # shellcheck disable=SC2016  # nginx variables, not shell ones
    local headers='proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;'
    cat >"$W/front/nginx.conf" <<EOF
worker_processes 1;
pid $W/front/nginx.pid;
error_log $W/front/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $W/front/tmp;
    proxy_temp_path $W/front/tmp;
    ssl_protocols TLSv1.3;
    ssl_certificate $W/certs/server.pem;
    ssl_certificate_key $W/certs/server.key;
    log_format record escape=json
        '{"ts":"\$time_iso8601","peer":"\$remote_addr","method":"\$request_method",'
        '"uri":"\$request_uri","status":\$status,"bytes":\$bytes_sent,'
        '"duration":\$request_time,"identity":"\$ssl_client_s_dn",'
        '"tls":"\$ssl_protocol","reused":"\$ssl_session_reused",'
        '"req":{"host":"\$http_host","user-agent":"\$http_user_agent",'
        '"accept":"\$http_accept","accept-encoding":"\$http_accept_encoding"},'
        '"resp":{"content-type":"\$sent_http_content_type",'
        '"content-length":"\$sent_http_content_length"}}';
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
        keepalive_requests 10000000;
    }
    proxy_http_version 1.1;
    server {
        listen 127.0.0.1:$P_N_HTTP backlog=4096;
        location / {
            $headers
            proxy_pass http://backend;
        }
    }
    server {
        listen 127.0.0.1:$P_N_TLS ssl backlog=4096;
        location / {
            $headers
            proxy_pass http://backend;
        }
    }
    server {
        listen 127.0.0.1:$P_N_MTLS ssl backlog=4096;
        ssl_client_certificate $CA;
        ssl_verify_client on;
        location / {
            $headers
            proxy_set_header X-Forwarded-Client-Cert \$ssl_client_s_dn;
            proxy_pass http://backend;
        }
    }
    server {
        listen 127.0.0.1:$P_N_MTLS_REC ssl backlog=4096;
        ssl_client_certificate $CA;
        ssl_verify_client on;
        access_log $W/front/records.log record buffer=64k flush=100ms;
        location / {
            $headers
            proxy_set_header X-Forwarded-Client-Cert \$ssl_client_s_dn;
            proxy_pass http://backend;
        }
    }
}
EOF
}

# HAProxy 2.6 as the second peer: one thread, upstream connections shared
# between clients (`http-reuse always`, as nginx's keepalive pool and
# mtls-proxy's pool do), TLS 1.3 only, the same three scenarios.
write_haproxy_conf() {
    mkdir -p "$W/haproxy"
    cat "$W/certs/server.pem" "$W/certs/server.key" >"$W/certs/server.combined.pem"
    cat >"$W/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    tune.ssl.cachesize 20000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 10s

backend backend
    option forwardfor
    server b 127.0.0.1:$P_BACKEND

frontend plain
    bind 127.0.0.1:$P_H_HTTP
    default_backend backend

frontend tls
    bind 127.0.0.1:$P_H_TLS ssl crt $W/certs/server.combined.pem alpn http/1.1
    http-request set-header X-Forwarded-Proto https
    default_backend backend

frontend mtls
    bind 127.0.0.1:$P_H_MTLS ssl crt $W/certs/server.combined.pem ca-file $CA verify required alpn http/1.1
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Client-Cert %[ssl_c_s_dn]
    default_backend backend
EOF
    haproxy -c -q -f "$W/haproxy/haproxy.cfg" >&2 || die "HAProxy refused its configuration"
}

# The nginx command line for a prefix directory, in the array NGX.
nginx_cmd() { # dir
    NGX=(nginx -p "$1" -c "$1/nginx.conf" -e "$1/error.log" -g "daemon off;")
}

