#!/bin/sh
# heron-net-up [NIC...]: DHCP on the test guest's NICs. /init runs it without arguments, in the
# background after the NIC drivers are in: loopback up, then every Ethernet NIC. A test runs it
# with the NICs it made later (a VLAN sub-interface: heron-net-up eth0.100); it returns at once.
#
# Each NIC: link up and a DHCP client of its own. udhcpc's first try is bounded (5 discovers
# 2 s apart): if it ends without a lease, the event script prints "addr=none" once. udhcpc then
# keeps retrying every 5 s for as long as the guest runs, so a DHCP server that starts later
# still gives the NIC an address, and the line with it follows. -O mtu asks for option 26,
# which udhcpc does not request by default.
nics=$*
if [ -z "$nics" ]; then
    ip link set lo up
    for dev in /sys/class/net/eth*; do
        [ -e "$dev" ] && nics="$nics ${dev##*/}"
    done
fi
for nic in $nics; do
    ip link set "$nic" up
    # Its own chatter would clutter the console (and hold a command's output open): the event
    # script reports what matters.
    udhcpc -f -i "$nic" -s /bin/heron-dhcp-event -O mtu -t 5 -T 2 -A 5 >/dev/null 2>&1 &
done
