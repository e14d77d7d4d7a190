/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ploop_if.h - the ploop ioctl ABI (x86-64), as include/ploop_if.h of the
 * OpenVZ ploop tools defines it, for the ploop model driver.
 *
 * GENERATED from ploop-common/src/ploop_if.rs by `cargo xtask gen-ploop-if`:
 * do not edit; the xtask test ploop_if_h_is_current fails when it differs.
 */
#ifndef PLOOP_MODEL_IF_H
#define PLOOP_MODEL_IF_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define PLOOPCTLTYPE	'P'

#define PLOOP_FMT_RAW           1
#define PLOOP_FMT_PLOOP1        2
#define PLOOP_FMT_ERROR         (-1)
#define PLOOP_FMT_UNDEFINED     0
#define PLOOP_FMT_V1            1
#define PLOOP_FMT_V2            2
#define PLOOP_FMT_RDONLY        1
#define PLOOP_FMT_FLAGS         1
#define PLOOP_FLAG_FS_SYNC      0x10000000
#define PLOOP_FMT_PREALLOCATED  2
#define PLOOP_FLAG_COOKIE       4
#define PLOOP_COOKIE_SIZE       64
#define PLOOP_FLAG_CLUBLKS      8
#define PLOOP_IO_AUTO           0
#define PLOOP_IO_DIRECT         1
#define PLOOP_IO_NFS            2
#define PLOOP_IO_KAIO           4
#define PLOOP_MAP_OFFSET        16
#define PLOOP_MNTN_OFF          0
#define PLOOP_MNTN_BALLOON      1
#define PLOOP_MNTN_FBLOADED     2
#define PLOOP_MNTN_SNAPSHOT     3
#define PLOOP_MNTN_TRACK        4
#define PLOOP_MNTN_DISCARD      5
#define PLOOP_MNTN_NOFAST       256
#define PLOOP_MNTN_MERGE        257
#define PLOOP_MNTN_GROW         258
#define PLOOP_MNTN_RELOC        259
#define PLOOP_MNTN_PUSH_BACKUP  260
#define PLOOP_EVENT_ABORTED     1
#define PLOOP_EVENT_STOPPED     2
#define PLOOP_EVENT_ENOSPC      3
#define PLOOP_DEVICE_MAJOR      182
#define PLOOP_PART_SHIFT        4

struct ploop_ctl_chunk {
	__s32	pctl_fd;
	__u32	pctl_type;
	__u32	pctl_flags;
	__u32	pctl_offset;
	__u64	pctl_start;
	__u64	pctl_len;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_ctl_chunk) == 32, "struct ploop_ctl_chunk is 32 bytes");

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
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_ctl) == 24, "struct ploop_ctl is 24 bytes");

struct ploop_ctl_delta {
	struct ploop_ctl	c;
	struct ploop_ctl_chunk	f;
	char	cookie[PLOOP_COOKIE_SIZE];
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_ctl_delta) == 120, "struct ploop_ctl_delta is 120 bytes");

struct ploop_truncate_ctl {
	int	fd;
	__u32	alloc_head;
	__u8	level;
	__u8	__mbz1;
	__u16	__mbz2;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_truncate_ctl) == 16, "struct ploop_truncate_ctl is 16 bytes");

struct ploop_index_update_ctl {
	__u32	n_maps;
	__u8	level;
	__u8	__mbz1;
	__u16	__mbz2;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_index_update_ctl) == 8, "struct ploop_index_update_ctl is 8 bytes");

struct ploop_freeblks_ctl {
	__u32	n_extents;
	__u32	alloc_head;
	__u8	level;
	__u8	__mbz1;
	__u16	__mbz2;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_freeblks_ctl) == 16, "struct ploop_freeblks_ctl is 16 bytes");

struct ploop_relocblks_ctl {
	__u32	n_extents;
	__u32	n_scanned;
	__u32	alloc_head;
	__u8	level;
	__u8	__mbz1;
	__u16	__mbz2;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_relocblks_ctl) == 16, "struct ploop_relocblks_ctl is 16 bytes");

struct ploop_balloon_ctl {
	__u32	mntn_type;
	__u32	alloc_head;
	__u8	level;
	__u8	inflate;
	__u8	keep_intact;
	__u8	__mbz;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_balloon_ctl) == 16, "struct ploop_balloon_ctl is 16 bytes");

struct ploop_getdevice_ctl {
	__u32	minor;
	__u32	__mbz1;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_getdevice_ctl) == 8, "struct ploop_getdevice_ctl is 8 bytes");

struct ploop_push_backup_init_ctl {
	__u8	cbt_uuid[16];
	__u64	cbt_mask_addr;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_push_backup_init_ctl) == 24, "struct ploop_push_backup_init_ctl is 24 bytes");

struct ploop_push_backup_io_ctl {
	__u8	cbt_uuid[16];
	__u32	direction;
	__u32	n_extents;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_push_backup_io_ctl) == 24, "struct ploop_push_backup_io_ctl is 24 bytes");

struct ploop_push_backup_stop_ctl {
	__u8	cbt_uuid[16];
	__u32	status;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_push_backup_stop_ctl) == 24, "struct ploop_push_backup_stop_ctl is 24 bytes");

struct ploop_dump_bat_ctl {
	__u32	level;
	__u32	start_cluster;
	__u32	nr_clusters;
	__u32 bat[0];
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_dump_bat_ctl) == 16, "struct ploop_dump_bat_ctl is 16 bytes");

struct ploop_track_extent {
	__u64	start;
	__u64	end;
} __attribute__((aligned(8)));
_Static_assert(sizeof(struct ploop_track_extent) == 16, "struct ploop_track_extent is 16 bytes");

#define PLOOP_IOC_ADD_DELTA         _IOW(PLOOPCTLTYPE, 0, struct ploop_ctl)	/* 0x40185000 */
#define PLOOP_IOC_CLEAR             _IO(PLOOPCTLTYPE, 1)	/* 0x5001 */
#define PLOOP_IOC_STOP              _IO(PLOOPCTLTYPE, 2)	/* 0x5002 */
#define PLOOP_IOC_START             _IO(PLOOPCTLTYPE, 3)	/* 0x5003 */
#define PLOOP_IOC_SNAPSHOT          _IOW(PLOOPCTLTYPE, 4, struct ploop_ctl)	/* 0x40185004 */
#define PLOOP_IOC_DEL_DELTA         _IOW(PLOOPCTLTYPE, 5, __u32)	/* 0x40045005 */
#define PLOOP_IOC_TRACK_INIT        _IOR(PLOOPCTLTYPE, 6, struct ploop_track_extent)	/* 0x80105006 */
#define PLOOP_IOC_TRACK_STOP        _IO(PLOOPCTLTYPE, 7)	/* 0x5007 */
#define PLOOP_IOC_TRACK_ABORT       _IO(PLOOPCTLTYPE, 8)	/* 0x5008 */
#define PLOOP_IOC_TRACK_SETPOS      _IOW(PLOOPCTLTYPE, 9, __u64)	/* 0x40085009 */
#define PLOOP_IOC_TRACK_READ        _IOR(PLOOPCTLTYPE, 10, struct ploop_track_extent)	/* 0x8010500a */
#define PLOOP_IOC_SYNC              _IO(PLOOPCTLTYPE, 11)	/* 0x500b */
#define PLOOP_IOC_MERGE             _IO(PLOOPCTLTYPE, 12)	/* 0x500c */
#define PLOOP_IOC_REPLACE_DELTA     _IOW(PLOOPCTLTYPE, 13, struct ploop_ctl)	/* 0x4018500d */
#define PLOOP_IOC_TRUNCATE          _IOW(PLOOPCTLTYPE, 14, struct ploop_truncate_ctl)	/* 0x4010500e */
#define PLOOP_IOC_UPDATE_INDEX      _IOW(PLOOPCTLTYPE, 16, struct ploop_index_update_ctl)	/* 0x40085010 */
#define PLOOP_IOC_GROW              _IOW(PLOOPCTLTYPE, 17, struct ploop_ctl)	/* 0x40185011 */
#define PLOOP_IOC_FBGET             _IOW(PLOOPCTLTYPE, 18, struct ploop_freeblks_ctl)	/* 0x40105012 */
#define PLOOP_IOC_BALLOON           _IOW(PLOOPCTLTYPE, 19, struct ploop_balloon_ctl)	/* 0x40105013 */
#define PLOOP_IOC_FREEBLKS          _IOW(PLOOPCTLTYPE, 20, struct ploop_freeblks_ctl)	/* 0x40105014 */
#define PLOOP_IOC_RELOCBLKS         _IOW(PLOOPCTLTYPE, 21, struct ploop_relocblks_ctl)	/* 0x40105015 */
#define PLOOP_IOC_GETDEVICE         _IOW(PLOOPCTLTYPE, 22, struct ploop_getdevice_ctl)	/* 0x40085016 */
#define PLOOP_IOC_DISCARD_INIT      _IO(PLOOPCTLTYPE, 23)	/* 0x5017 */
#define PLOOP_IOC_DISCARD_FINI      _IO(PLOOPCTLTYPE, 24)	/* 0x5018 */
#define PLOOP_IOC_DISCARD_WAIT      _IO(PLOOPCTLTYPE, 25)	/* 0x5019 */
#define PLOOP_IOC_FBDROP            _IO(PLOOPCTLTYPE, 26)	/* 0x501a */
#define PLOOP_IOC_FBFILTER          _IOR(PLOOPCTLTYPE, 27, unsigned long)	/* 0x8008501b */
#define PLOOP_IOC_MAX_DELTA_SIZE    _IOW(PLOOPCTLTYPE, 28, __u64)	/* 0x4008501c */
#define PLOOP_IOC_PUSH_BACKUP_INIT  _IOR(PLOOPCTLTYPE, 29, struct ploop_push_backup_init_ctl)	/* 0x8018501d */
#define PLOOP_IOC_PUSH_BACKUP_IO    _IOR(PLOOPCTLTYPE, 30, struct ploop_push_backup_io_ctl)	/* 0x8018501e */
#define PLOOP_IOC_PUSH_BACKUP_STOP  _IOR(PLOOPCTLTYPE, 31, struct ploop_push_backup_stop_ctl)	/* 0x8018501f */
#define PLOOP_IOC_FREEZE            _IO(PLOOPCTLTYPE, 32)	/* 0x5020 */
#define PLOOP_IOC_THAW              _IO(PLOOPCTLTYPE, 33)	/* 0x5021 */
#define PLOOP_IOC_DUMP_CACHED_BAT   _IOW(PLOOPCTLTYPE, 34, struct ploop_dump_bat_ctl)	/* 0x40105022 */

#endif /* PLOOP_MODEL_IF_H */
