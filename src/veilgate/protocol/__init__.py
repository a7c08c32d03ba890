"""veilgate.protocol"""
