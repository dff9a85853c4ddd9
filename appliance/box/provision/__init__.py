"""Field provisioning: keys, enrolment, station bundles, network drop-ins, preview, self-test.

    enrolment.py        init (keys, config), enrolment request, station bundle (sign/verify/import)
    station_devices.py  `appliance station devices add` (= `appliance provision station-add`)
    network.py          systemd drop-ins: pixel unit → camera only, uplink unit → station only
    preview.py          one masked frame for the technician (the only command writing pixels)
    check.py            the on-site pass/fail table
    layout.py           where things live in the state directory; config rewriting

Formats and install layout: docs/provisioning.md.
"""
