"""veilgate.tun"""
