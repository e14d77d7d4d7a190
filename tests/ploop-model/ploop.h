/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ploop.h - the model driver's private header, where vz7 keeps
 * include/linux/ploop/ploop.h: the device, the delta and its format
 * operations (struct ploop_delta_ops), and what the files of the module
 * share.  The user ABI is ploop_if.h (generated).
 */
#ifndef PLOOP_MODEL_PLOOP_H
#define PLOOP_MODEL_PLOOP_H

#include <linux/version.h>
#include <linux/types.h>
#include <linux/list.h>
#include <linux/blkdev.h>
#include <linux/bio.h>
#include <linux/fs.h>
#include <linux/kobject.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "ploop_if.h"

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0) && \
    LINUX_VERSION_CODE < KERNEL_VERSION(6, 9, 0)
#error "the ploop model supports kernels < 6.5 and >= 6.9 (tested: 6.1, 6.12)"
#endif

#define PLOOP_MAX_DELTAS	128
#define PLOOP_MAX_LEAKS		16
#define PLOOP_BLK_SHIFT		12
#define PLOOP_BLK_SIZE		(1U << PLOOP_BLK_SHIFT)
#define PLOOP_MAX_SIZE		(1LL << 40)	/* 1 TiB */
#define PLOOP_QUIESCE_TIMEOUT	(30 * HZ)
#define PLOOP_MAX_HOLDERS	8
#define PLOOP_NAME_LEN		32
#define PLOOP_MAX_HOLD_MS	10000
#define PLOOP_PART_MAX		(1 << PLOOP_PART_SHIFT)	/* 16 minors a device */

/* 4 KiB (the model's block) to 8 MiB (one cluster is buffered in memory) */
#define PLOOP1_MIN_CLUSTER_LOG	3
#define PLOOP1_MAX_CLUSTER_LOG	14

/* Functions probes attach to: never inlined, never cloned or split. */
#if defined(__GNUC__) && !defined(__clang__)
#define PLOOP_PROBED	noinline __used __attribute__((__noipa__))
#else
#define PLOOP_PROBED	noinline __used
#endif

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
typedef blk_mode_t ploop_mode_t;
#else
typedef fmode_t ploop_mode_t;
#endif

struct ploop_device;
struct ploop_delta;

/* What a snapshot hands the old top's format: the new top, already open. */
struct ploop_snapdata {
	struct ploop_delta	*delta;
};

/*
 * A delta format, as vz7's struct ploop_delta_ops: each format (fmt_raw.c,
 * fmt_ploop1.c) registers one table and dev.c reaches it only through
 * delta->ops.  The snapshot's switch is top_delta->ops->complete_snapshot():
 * a function whose address sits in a table keeps a symbol whatever the
 * compiler inlines, so a probe there sees every switch.
 */
struct ploop_delta_ops {
	struct list_head	list;
	unsigned int		id;		/* PLOOP_FMT_* */
	const char		*name;		/* pdelta/<level>/format */

	/* Read the file as this format; sets delta->size.  @rdonly: not the top. */
	int	(*open)(struct ploop_delta *delta, unsigned int cluster_log,
			bool rdonly);
	/* Free the format's state; a delta still writable is stopped first. */
	void	(*destroy)(struct ploop_delta *delta);
	/* It takes writes again (PLOOP_IOC_START, the merge's target). */
	int	(*start)(struct ploop_delta *delta);
	/* The delta stops taking writes: synced, its header says closed. */
	int	(*stop)(struct ploop_delta *delta);
	int	(*sync)(struct ploop_delta *delta);
	/* Read the index again: user space wrote into the file (online merge). */
	int	(*refresh)(struct ploop_delta *delta);

	/* Does the delta hold 4 KiB block @blk, and where in its file is @pos? */
	bool	(*map_index)(struct ploop_delta *delta, unsigned long blk);
	loff_t	(*file_pos)(struct ploop_delta *delta, loff_t pos);
	/* Write into the top delta (allocating where it lacks the block). */
	int	(*write)(struct ploop_delta *top, unsigned long blk,
			 unsigned int off, const void *buf, unsigned int len);

	/*
	 * The delta switch, called on the old top with the device quiesced:
	 * the old top becomes read-only; dev.c then puts sd->delta on top.
	 */
	int	(*complete_snapshot)(struct ploop_delta *top,
				     struct ploop_snapdata *sd);
};

struct ploop_delta {
	struct ploop_device		*plo;
	const struct ploop_delta_ops	*ops;
	void				*priv;		/* the format's */
	struct file			*file;
	int				level;
	bool				rdonly;
	loff_t				size;		/* the device size it describes */
	int				fmt_version;	/* ploop1: PLOOP_FMT_V1/V2 */
	u64				max_delta_size;	/* PLOOP_IOC_MAX_DELTA_SIZE */

	struct kobject			*kobj;		/* pdelta/<level>, NULL until added */
};

struct ploop_device {
	int			index;
	struct gendisk		*disk;
	struct kobject		*pstate;
	struct kobject		*pdelta;	/* pdelta/<level>/ per delta */

	struct mutex		ctl_mutex;
	int			maintenance_type;
	/* vz7 PLOOP_S_RUNNING: PLOOP_IOC_START .. PLOOP_IOC_STOP */
	bool			running;
	/*
	 * The capacity is the deltas' size.  vz7 shows it only while running;
	 * the model also from the first ADD_DELTA on (see README, "Life
	 * cycle"), until PLOOP_IOC_STOP or PLOOP_IOC_CLEAR.
	 */
	bool			live;
	/* vz7 PLOOP_S_LOCKED: /proc/vz/ploop_minor handed this device out */
	bool			locked;
	atomic_t		open_count;	/* pstate/open_count */
	char			cookie[PLOOP_COOKIE_SIZE];	/* PLOOP_FLAG_COOKIE */

	/* deltas[0] is the base, deltas[nr_deltas - 1] the top */
	struct ploop_delta	*deltas[PLOOP_MAX_DELTAS];
	unsigned int		nr_deltas;
	loff_t			size;		/* bytes */
	unsigned int		cluster_log;	/* the base's pctl_cluster_log */
	int			fmt_version;	/* PLOOP_FMT_V1/V2 of ploop1 deltas */

	/* PLOOP_IOC_FREEZE state */
	bool			user_frozen;
	/* freezes leaked by an injected bug, thawed by PLOOP_IOC_THAW */
	struct block_device	*leaked[PLOOP_MAX_LEAKS];
	int			nr_leaked;

	/* I/O */
	spinlock_t		lock;
	struct bio_list		queue;		/* accepted, for the worker */
	struct bio_list		held;		/* parked while quiesced */
	unsigned int		inflight;	/* accepted, not yet completed */
	bool			quiesced;
	unsigned int		noio_flags;
	wait_queue_head_t	idle_wait;
	struct workqueue_struct	*wq;
	struct work_struct	work;
	void			*scratch;	/* one block, worker only */
};

/*
 * The new top of a snapshot must take writes.  The formats check it in
 * complete_snapshot, after the freeze and the quiesce: the model's error
 * path after the freeze (a raw delta opened O_RDONLY gets -EBADF there).
 */
static inline int ploop_snapdata_writable(const struct ploop_snapdata *sd)
{
	return sd->delta->file->f_mode & FMODE_WRITE ? 0 : -EBADF;
}

/* dev.c */
int ploop_register_format(struct ploop_delta_ops *ops);
void ploop_unregister_format(struct ploop_delta_ops *ops);
int ploop_quiesce(struct ploop_device *plo);
void ploop_relax(struct ploop_device *plo);

/* fmt_raw.c, fmt_ploop1.c: register their tables (one module, see README) */
int ploop_fmt_raw_init(void);
void ploop_fmt_raw_exit(void);
int ploop_fmt_ploop1_init(void);
void ploop_fmt_ploop1_exit(void);

/* io.c: a delta file's I/O */
int ploop_file_read(struct file *file, void *buf, size_t len, loff_t pos);
int ploop_file_write(struct file *file, const void *buf, size_t len,
		     loff_t pos);

/* map.c: which delta holds a block */
int ploop_read_blk(struct ploop_device *plo, unsigned int below,
		   unsigned long blk, unsigned int off, void *buf,
		   unsigned int len);
int ploop_rw_buf(struct ploop_device *plo, void *buf, unsigned int len,
		 loff_t pos, bool write);

/* sysfs.c */
int ploop_sysfs_init(struct ploop_device *plo);
void ploop_sysfs_uninit(struct ploop_device *plo);
void ploop_delta_sysfs_add(struct ploop_device *plo, struct ploop_delta *d);
void ploop_delta_sysfs_del(struct ploop_delta *d);

#endif /* PLOOP_MODEL_PLOOP_H */
