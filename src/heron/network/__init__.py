"""Fractal, Heron's networking: distributed switches realised on every node (pure plan in
plan.py, drivers for Linux bridges, Open vSwitch, VXLAN, taps and DHCP beside it)."""
