"""Stack files the tests' local runs start from (tests/ is on pytest's ``pythonpath``)."""

#: Three regions, an eu zone of two, health checks every 10 s and unhealthy after 2 failures (scaled by
#: each run's time scale): the smallest stack with a failover inside a zone and a region outside it.
THREE_REGIONS = """config:
  meridian:regions: [us-east-1, eu-west-1, eu-central-1]
  meridian:residencyZones:
    eu: [eu-west-1, eu-central-1]
  meridian:homeRegions: {eu: eu-west-1, global: us-east-1}
  meridian:healthCheckInterval: 10
  meridian:failureThreshold: 2
"""
