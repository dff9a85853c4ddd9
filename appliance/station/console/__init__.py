"""The operator console ("black monitor"): a web application in its own process.

    appliance station console serve --station-dir DIR --console-dir DIR [--bind 127.0.0.1:8443]
    appliance station console user add NAME --role operator|supervisor|dpo|admin

Pages are rendered on the server (Jinja2 templates) with a little plain JavaScript
(static/console.js); alarms are pushed live with Server-Sent Events. See docs/console.md.
"""
