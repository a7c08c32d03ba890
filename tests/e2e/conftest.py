"""End-to-end tests run on real network namespaces, veths, TUN devices and nftables (root only)."""
