"""Operating schedules: the only library code that imports Prefect (servers, doctor, schedules, deployments)."""
