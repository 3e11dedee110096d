# random_port: prints a random TCP port for a server of the scripts to listen on, below the
# kernel's ephemeral range. A port inside that range can be the local end of any outgoing
# connection of the moment (the tests' database clients, chromedriver's), and binding it
# then fails with "Address already in use" although nothing listens there, so no check
# beforehand can see it coming. Callers still check for a listener and retry.
random_port() {
    local low=32768
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    if ((low <= 20000)); then
        low=32768 # a system with a lowered range: fall back to the usual one
    fi
    echo $((20000 + RANDOM % (low - 20000)))
}
