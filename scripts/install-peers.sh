#!/usr/bin/env bash
# Install the system peers the tests talk to (DCMTK tools, Orthanc with its
# DICOMweb plugin, HAProxy in front of two storage SCPs, docker-compose to
# check the compose file, Chromium and its driver for the console's pages)
# from Debian's packages, when they are missing. Needs root (or sudo).
set -euo pipefail

need=()
for tool in dcmqrscp storescp storescu findscu movescu getscu echoscu; do
    [ -x "/usr/bin/$tool" ] || need+=(dcmtk)
done
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1 || need+=(orthanc-dicomweb)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[ ${#need[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# policy-rc.d keeps the package from starting Orthanc as a system service.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
