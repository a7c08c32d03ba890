"""veilgate.credentials"""
