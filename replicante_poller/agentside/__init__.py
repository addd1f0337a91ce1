"""agentside"""
