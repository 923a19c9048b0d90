"""What a node measures: itself (`node`), its running VMs (`vm`) and its BMC's sensors
(`ipmi`). Collectors return raw values, counters as counters, named as `monitor.catalog`
says; turning counters into rates and keeping history is the store's business."""
