"""Features: statistics over the eval split, their files and views, dashboards, the
blind rating study."""
