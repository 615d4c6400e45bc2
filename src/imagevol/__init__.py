"""imagevol"""
