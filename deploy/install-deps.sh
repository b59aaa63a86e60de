#!/usr/bin/env bash
# install-deps.sh: everything atoll needs to build, test and run its lab on
# a fresh Debian 12 machine, as root. Idempotent and quiet when nothing is
# missing; `make run` and `make test` call it.
set -euo pipefail

packages=(
	clang llvm libbpf-dev bpftool   # make generate (bpf2go)
	iproute2 ethtool tcpdump        # namespaces, offloads, captures
	iputils-ping curl python3 openssl
	dovecot-imapd dovecot-pop3d dovecot-lmtpd   # deploy/lab/peer: real IMAP/POP3/LMTP nodes
	slapd ldap-utils                # deploy/lab/peer: private LDAP directory
	postfix                         # deploy/lab/peer: private MTA relaying to LMTP
	keepalived bird2                # deploy/lab/reference: VRRP between the LB hosts, BGP/ECMP example
	swaks libnet-ssleay-perl        # proxy/lmtp tests: an MTA's LMTP client (with STARTTLS)
	haproxy perdition nginx libnginx-mod-mail   # bench: the contenders
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Keep packages (dovecot, …) from starting system daemons that would
	# grab ports 143/110/…: tests and the lab run private instances.
	made_policy=
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	# slapd: install the binaries only; without this its postinst builds a
	# system database under /etc/ldap/slapd.d (private instances use their own).
	echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections
	# postfix: binaries only, no /etc/postfix/main.cf and no system MTA on
	# port 25 (deploy/lab/peer runs private instances with their own config).
	printf '%s\n' 'postfix postfix/main_mailer_type select No configuration' \
		'postfix postfix/mailname string mta.example.org' | debconf-set-selections
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	if [[ -n $made_policy ]]; then
		rm -f /usr/sbin/policy-rc.d
		trap - EXIT
	fi
	# A system postfix must not run. Neither the preseed nor policy-rc.d
	# lets the package start one; should one run anyway, stop it by its
	# pid file (never by name).
	pidf=/var/spool/postfix/pid/master.pid
	if [[ " ${missing[*]} " == *" postfix "* && -s $pidf ]]; then
		pid=$(tr -dc 0-9 <"$pidf")
		if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == master ]]; then
			echo "install-deps: stopping the system postfix (pid $pid)"
			kill "$pid"
		fi
	fi
fi

# bpffs, for pinned maps and links.
if ! mountpoint -q /sys/fs/bpf; then
	mount -t bpf bpf /sys/fs/bpf
fi

# Go modules (the module proxy is the only Go registry here).
cd "$(dirname "$0")/.."
go mod download
