#!/bin/sh
# heron-dhcp-event: udhcpc's event script. It applies a lease (address, MTU from option 26,
# default route) and reports each new state of a NIC on the console, one line each:
#   heron-net NIC mac=MAC addr=IP/PREFIX mtu=MTU router=ROUTER|none
#   heron-net NIC mac=MAC addr=none        (no lease yet: printed once, until a lease comes)
# A renewal that changes nothing prints nothing, so the console shows changes, not chatter.
# udhcpc passes the lease in the environment: interface, ip, mask (a prefix length), router
# (a list), mtu, broadcast.
mkdir -p /run/heron-net
state=/run/heron-net/$interface
mac=$(cat "/sys/class/net/$interface/address")

report() {
    [ "$(cat "$state" 2>/dev/null)" = "$1" ] && return
    echo "$1" >"$state"
    echo "heron-net $interface mac=$mac $1" >/dev/console
}

case "$1" in
deconfig)
    # At start and when a lease is lost: no address until the next one.
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    rm -f "$state"
    ;;
leasefail | nak)
    report "addr=none"
    ;;
bound | renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    gateway=${router%% *}
    line="addr=$ip/$mask mtu=$(cat "/sys/class/net/$interface/mtu") router=${gateway:-none}"
    if [ "$(cat "$state" 2>/dev/null)" != "$line" ]; then
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$mask" broadcast "${broadcast:-+}" dev "$interface"
        if [ -n "$gateway" ]; then
            # One default route per NIC, told apart by metric, so two NICs do not fight.
            ip route replace default via "$gateway" dev "$interface" \
                metric "$(cat "/sys/class/net/$interface/ifindex")"
        fi
    fi
    report "$line"
    ;;
esac
exit 0
