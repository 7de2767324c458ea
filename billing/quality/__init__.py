"""What the shadow evaluations say about each lever's quality: agreement with its 95% interval (selectors), the quality
SLOs that watch it, their alerts and automatic actions (services)."""
