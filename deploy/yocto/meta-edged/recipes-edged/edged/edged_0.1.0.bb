SUMMARY = "On-device object detection daemon publishing detections on ZeroMQ"
DESCRIPTION = "edged runs a YOLO model on the i.MX 8M Plus or i.MX 93 NPU (CPU fallback), \
               decodes its heads, and publishes detections and status as JSON on a ZeroMQ \
               PUB socket. It runs as a systemd notify service with a watchdog."
HOMEPAGE = "https://github.com/edged-project/edged"
BUGTRACKER = "https://github.com/edged-project/edged/issues"
SECTION = "multimedia"
CVE_PRODUCT = "edged"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=22376aed491d5576996714ec54a04228"

SRC_URI = "git://github.com/edged-project/edged.git;protocol=https;branch=main"
SRCREV = "284f72c0000000000000000000000000000000000"

S = "${UNPACKDIR}/git"

inherit python_setuptools_build_meta systemd useradd

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir ${localstatedir}/lib/edged \
                       --shell ${base_sbindir}/nologin --user-group --groups video edged"

SYSTEMD_SERVICE:${PN} = "edged.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/edged.service ${D}${systemd_system_unitdir}/edged.service
    install -d ${D}${sysconfdir}/edged
    install -m 0640 ${S}/deploy/edged-board.yaml ${D}${sysconfdir}/edged/config.yaml
    install -d ${D}${docdir}/edged
    install -m 0644 ${S}/README.md ${S}/config.example.yaml ${D}${docdir}/edged/
}

FILES:${PN} += "${systemd_system_unitdir}/edged.service"
CONFFILES:${PN} = "${sysconfdir}/edged/config.yaml"

# The BSP's TFLite runtime (tflite_runtime / ai_edge_litert) and OpenCV (with GStreamer):
# vendor delegates are built against them.
RDEPENDS:${PN} = "\
    ${EDGED_NPU_DELEGATES} \
    python3-core \
    python3-json \
    python3-logging \
    python3-numpy \
    python3-opencv \
    python3-pyyaml \
    python3-pyzmq \
    python3-tensorflow-lite \
"
# The NPU delegates by SoC: VX on i.MX 8M Plus, Ethos-U (and its driver stack) on i.MX 93.
EDGED_NPU_DELEGATES ?= "\
    ${@'tensorflow-lite-vx-delegate' if 'mx8mp-nxp-bsp' in d.getVar('MACHINEOVERRIDES').split(':') else ''} \
    ${@'tensorflow-lite-ethosu-delegate ethos-u-driver-stack' if 'mx93-nxp-bsp' in d.getVar('MACHINEOVERRIDES').split(':') else ''} \
"
RRECOMMENDS:${PN} = "python3-systemd"
