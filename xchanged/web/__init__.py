"""The dashboard's static files (index.html, dashboard.js, dashboard.css), served by the daemon at /
(runtime/http_api.py) and shipped in the wheel as package data. No build step and nothing from a
CDN: vanilla JavaScript that polls the JSON API and draws with the DOM and inline SVG."""
