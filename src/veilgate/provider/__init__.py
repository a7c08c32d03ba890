"""veilgate.provider"""
