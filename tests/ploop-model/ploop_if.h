/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ploop_if.h - the ploop ioctl ABI as used by the ploop_model test driver.
 *
 * Layouts and numbers follow the OpenVZ ploop user-space ABI on x86-64, as
 * described in /work/shared/CONTRACT.md.  Usable from kernel and user space.
 */
#ifndef PLOOP_MODEL_IF_H
#define PLOOP_MODEL_IF_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define PLOOPCTLTYPE		'P'

/* ploop_ctl.pctl_format */
#define PLOOP_FMT_RAW		1
#define PLOOP_FMT_PLOOP1	2

/* PLOOP_FMT_PLOOP1 subversions (pstate/fmt_version) */
#define PLOOP_FMT_UNDEFINED	0
#define PLOOP_FMT_V1		1		/* "WithoutFreeSpace": BAT in sectors */
#define PLOOP_FMT_V2		2		/* "WithouFreSpacExt": BAT in clusters */

/* ploop_ctl_chunk.pctl_type of chunk #0: the I/O engine */
#define PLOOP_IO_AUTO		0
#define PLOOP_IO_DIRECT		1
#define PLOOP_IO_NFS		2
#define PLOOP_IO_KAIO		4

/* ploop_ctl.pctl_flags */
#define PLOOP_FMT_RDONLY	1		/* delta is a read-only lower delta */
#define PLOOP_FLAG_FS_SYNC	0x10000000	/* freeze the fs around the switch */

/* maintenance_type values (only the two the model uses) */
#define PLOOP_MNTN_OFF		0
#define PLOOP_MNTN_SNAPSHOT	3

struct ploop_ctl_chunk {
	__s32	pctl_fd;	/* file descriptor of the delta (or sync fd) */
	__u32	pctl_type;
	__u32	pctl_flags;
	__u32	pctl_offset;
	__u64	pctl_start;
	__u64	pctl_len;
};

struct ploop_ctl {
	__u32	pctl_format;
	__u32	pctl_flags;
	__u32	pctl_cluster_log;
	__u32	pctl_size;
	__u16	pctl_chunks;
	__u8	pctl_level;
	__u8	__mbz1;
	__u32	__mbz2;
	struct ploop_ctl_chunk chunks[0];
};

_Static_assert(sizeof(struct ploop_ctl_chunk) == 32, "ploop_ctl_chunk must be 32 bytes");
_Static_assert(_Alignof(struct ploop_ctl_chunk) == 8, "ploop_ctl_chunk must be 8-aligned");
_Static_assert(sizeof(struct ploop_ctl) == 24, "ploop_ctl must be 24 bytes");
_Static_assert(_Alignof(struct ploop_ctl) == 8, "ploop_ctl must be 8-aligned");

#define PLOOP_IOC_ADD_DELTA	_IOW(PLOOPCTLTYPE, 0, struct ploop_ctl)	/* 0x40185000 */
#define PLOOP_IOC_SNAPSHOT	_IOW(PLOOPCTLTYPE, 4, struct ploop_ctl)	/* 0x40185004 */
#define PLOOP_IOC_CLEAR		_IO(PLOOPCTLTYPE, 6)			/* 0x5006 */
#define PLOOP_IOC_FREEZE	_IO(PLOOPCTLTYPE, 32)			/* 0x5020 */
#define PLOOP_IOC_THAW		_IO(PLOOPCTLTYPE, 33)			/* 0x5021 */

#endif /* PLOOP_MODEL_IF_H */
