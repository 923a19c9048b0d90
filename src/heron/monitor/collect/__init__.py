"""What a node measures: itself (`node`), its running VMs (`vm`), its BMC's sensors
(`ipmi`), its pools and heron-io (`storage`), its own services: certificates and the
ConfigDB (`services`). Collectors return raw values, counters as counters, named as
`monitor.catalog` says; turning counters into rates and keeping history is the store's
business."""
