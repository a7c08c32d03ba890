"""veilgate.cli"""
