"""veilgate.transport"""
