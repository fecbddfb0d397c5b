"""Console: the browser pages of the command center (login, live incidents, dispatch,
accept), served by the hub process as static files with no CDN and no build step.
Labels in Chinese (default) and English."""
