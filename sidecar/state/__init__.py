"""The pure core: cluster state and the functions over it. No I/O, no clock."""
