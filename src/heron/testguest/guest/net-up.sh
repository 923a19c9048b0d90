#!/bin/sh
# heron-net-up: brings the test guest's network up, in the background of /init, after the NIC
# drivers are in. Loopback first, then every Ethernet NIC: link up and a DHCP client of its own.
#
# udhcpc's first try is bounded (5 discovers 2 s apart): if it ends without a lease, the event
# script prints "addr=none" once. udhcpc then keeps retrying every 5 s for as long as the guest
# runs, so a DHCP server that starts later still gives the NIC an address, and the line with
# it follows. -O mtu asks for option 26, which udhcpc does not request by default.
ip link set lo up
for dev in /sys/class/net/eth*; do
    [ -e "$dev" ] || continue
    nic=${dev##*/}
    ip link set "$nic" up
    # Its own chatter would clutter the console; the event script reports what matters.
    udhcpc -f -i "$nic" -s /bin/heron-dhcp-event -O mtu -t 5 -T 2 -A 5 >/dev/null 2>&1 &
done
