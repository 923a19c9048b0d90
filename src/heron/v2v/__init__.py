"""V2V: import VMs from VMware and Hyper-V"""
