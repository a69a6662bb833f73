#!/usr/bin/env python3
"""Ansible inventory (JSON, read by Ansible's yaml plugin) from an mxpin
inventory, so the playbook checks exactly what mxpin.toml describes.

usage: inventory.py MXPIN_TOML SSH_CONFIG OUT_JSON
"""
import json
import sys
import tomllib


def main():
    src, ssh_config, out = sys.argv[1:4]
    with open(src, "rb") as f:
        inv = tomllib.load(f)
    settings = inv.get("settings", {})
    hosts = {}
    for name, h in inv["hosts"].items():
        dest = h["ssh"]
        v = {
            "mx": h["mx"],
            "smtp_port": h.get("smtp_port", 25),
            "config_dir": h.get("config_dir", "/etc/postfix"),
            "relays": [],
        }
        user, _, host = dest.rpartition("@")
        v["ansible_host"] = host
        if user:
            v["ansible_user"] = user
        if h.get("sudo"):
            v["ansible_become"] = True
        hosts[name] = v
    for domain, d in inv.get("domains", {}).items():
        for b in d["backups"]:
            hosts[b]["relays"].append(
                {"domain": domain, "primary": d["primary"], "recipients": d.get("recipients", [])}
            )
    doc = {
        "all": {
            "hosts": hosts,
            "vars": {
                "ansible_ssh_common_args": "-F " + ssh_config,
                "ansible_python_interpreter": "/usr/bin/python3",
                "digest": settings.get("digest", "sha256"),
                "renew_days": settings.get("renew_days", 30),
            },
        }
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
