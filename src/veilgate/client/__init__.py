"""veilgate.client"""
