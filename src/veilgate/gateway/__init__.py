"""veilgate.gateway"""
