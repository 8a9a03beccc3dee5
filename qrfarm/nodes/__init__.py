"""What the farm knows of its PACS nodes besides the job life cycle: who may
store here (admission facts)."""
