// SPDX-License-Identifier: GPL-2.0
/*
 * sysfs.c - /sys/block/ploopN/pstate/ and pdelta/<level>/, where vz7's
 * sysfs.c has them.
 */

#include <linux/device.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kobject.h>
#include <linux/slab.h>
#include <linux/sysfs.h>

#include "ploop.h"


static struct ploop_device *ploop_from_pstate(struct kobject *kobj)
{
	return dev_to_disk(kobj_to_dev(kobj->parent))->private_data;
}

static ssize_t nr_deltas_show(struct kobject *kobj,
			      struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n",
			  READ_ONCE(ploop_from_pstate(kobj)->nr_deltas));
}

static ssize_t top_show(struct kobject *kobj, struct kobj_attribute *attr,
			char *buf)
{
	unsigned int nr = READ_ONCE(ploop_from_pstate(kobj)->nr_deltas);

	return sysfs_emit(buf, "%d\n", (int)nr - 1);
}

static ssize_t leaked_freezes_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(ploop_from_pstate(kobj)->nr_leaked));
}

static ssize_t maintenance_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(ploop_from_pstate(kobj)->maintenance_type));
}

/* libploop reads these two to build a snapshot delta (get_image_param_online) */
static ssize_t block_size_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n",
			  1U << READ_ONCE(ploop_from_pstate(kobj)->cluster_log));
}

static ssize_t fmt_version_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(ploop_from_pstate(kobj)->fmt_version));
}

/* vz7 PLOOP_S_RUNNING: libploop takes a device that is not for a stopped one */
static ssize_t running_show(struct kobject *kobj, struct kobj_attribute *attr,
			    char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(ploop_from_pstate(kobj)->running));
}

/* vz7 PLOOP_S_LOCKED: /proc/vz/ploop_minor handed the device out */
static ssize_t locked_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(ploop_from_pstate(kobj)->locked));
}

static ssize_t open_count_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  atomic_read(&ploop_from_pstate(kobj)->open_count));
}

/*
 * The ADD_DELTA cookie: libploop names its device by it, and takes a device
 * with an empty cookie as being removed.  Read without ctl_mutex as vz7
 * does: set by the first ADD_DELTA that brings one, cleared with the last delta.
 */
static ssize_t cookie_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	struct ploop_device *plo = ploop_from_pstate(kobj);

	return sysfs_emit(buf, "%.*s\n", PLOOP_COOKIE_SIZE - 1, plo->cookie);
}

static struct kobj_attribute ploop_attr_running = __ATTR_RO(running);
static struct kobj_attribute ploop_attr_locked = __ATTR_RO(locked);
static struct kobj_attribute ploop_attr_open_count = __ATTR_RO(open_count);
static struct kobj_attribute ploop_attr_cookie = __ATTR_RO(cookie);
static struct kobj_attribute ploop_attr_block_size = __ATTR_RO(block_size);
static struct kobj_attribute ploop_attr_fmt_version = __ATTR_RO(fmt_version);
static struct kobj_attribute ploop_attr_nr_deltas = __ATTR_RO(nr_deltas);
static struct kobj_attribute ploop_attr_maintenance = __ATTR_RO(maintenance);
static struct kobj_attribute ploop_attr_top = __ATTR_RO(top);
static struct kobj_attribute ploop_attr_leaked = __ATTR_RO(leaked_freezes);

static struct attribute *ploop_pstate_attrs[] = {
	&ploop_attr_nr_deltas.attr,
	&ploop_attr_top.attr,
	&ploop_attr_leaked.attr,
	&ploop_attr_maintenance.attr,
	&ploop_attr_block_size.attr,
	&ploop_attr_fmt_version.attr,
	&ploop_attr_running.attr,
	&ploop_attr_locked.attr,
	&ploop_attr_open_count.attr,
	&ploop_attr_cookie.attr,
	NULL,
};

static const struct attribute_group ploop_pstate_group = {
	.attrs = ploop_pstate_attrs,
};

/*
 * sysfs: /sys/block/ploopN/pdelta/<level>/{image,format}, as vz7 has them:
 * the delta file's path (d_path of its struct file) and "raw" or "ploop1",
 * so that a tool finds the deltas a snapshot has just made read-only.  One
 * kobject per level, like vz7's delta->kobj.  Each holds its own reference
 * to the file and its format, so show() never touches the ploop_delta and
 * takes no lock: a level removed under ctl_mutex (PLOOP_IOC_CLEAR) waits
 * for readers in kernfs, and a reader taking ctl_mutex would deadlock there.
 */
struct ploop_delta_kobj {
	struct kobject		kobj;
	struct file		*file;
	const char		*format;	/* the format's name, static */
	int			level;
	/*
	 * For ro only, read with READ_ONCE: kernfs lets no show() run once
	 * kobject_del() has returned, and the delta is freed after that.
	 */
	struct ploop_delta	*delta;
};

static struct ploop_delta_kobj *to_delta_kobj(struct kobject *kobj)
{
	return container_of(kobj, struct ploop_delta_kobj, kobj);
}

static ssize_t image_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	char *p = d_path(&to_delta_kobj(kobj)->file->f_path, buf, PAGE_SIZE - 1);
	size_t len;

	if (IS_ERR(p))
		return PTR_ERR(p);
	len = strlen(p);	/* d_path builds the name at the buffer's end */
	memmove(buf, p, len);
	buf[len] = '\n';
	return len + 1;
}

static ssize_t format_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%s\n", to_delta_kobj(kobj)->format);
}

static ssize_t level_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%d\n", to_delta_kobj(kobj)->level);
}

/* libploop tells a running top delta that takes writes by it (online merge) */
static ssize_t ro_show(struct kobject *kobj, struct kobj_attribute *attr,
		       char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(to_delta_kobj(kobj)->delta->rdonly));
}

/* vz7 names the I/O engine; the model has one, through the page cache */
static ssize_t io_show(struct kobject *kobj, struct kobj_attribute *attr,
		       char *buf)
{
	return sysfs_emit(buf, "direct\n");
}

static struct kobj_attribute ploop_attr_level = __ATTR_RO(level);
static struct kobj_attribute ploop_attr_ro = __ATTR_RO(ro);
static struct kobj_attribute ploop_attr_io = __ATTR_RO(io);
static struct kobj_attribute ploop_attr_image = __ATTR_RO(image);
static struct kobj_attribute ploop_attr_format = __ATTR_RO(format);

static struct attribute *ploop_delta_attrs[] = {
	&ploop_attr_level.attr,
	&ploop_attr_image.attr,
	&ploop_attr_format.attr,
	&ploop_attr_io.attr,
	&ploop_attr_ro.attr,
	NULL,
};
ATTRIBUTE_GROUPS(ploop_delta);

static void ploop_delta_kobj_release(struct kobject *kobj)
{
	struct ploop_delta_kobj *dk = to_delta_kobj(kobj);

	if (dk->file)
		fput(dk->file);
	kfree(dk);
}

static struct kobj_type ploop_delta_ktype = {
	.release	= ploop_delta_kobj_release,
	.sysfs_ops	= &kobj_sysfs_ops,
	.default_groups	= ploop_delta_groups,
};

/*
 * A delta that made it onto the device shows up at its level.  Failing here
 * costs a tool its view, not the device its delta: warned, not refused.
 */
void ploop_delta_sysfs_add(struct ploop_device *plo, struct ploop_delta *d)
{
	struct ploop_delta_kobj *dk;
	int err;

	dk = kzalloc(sizeof(*dk), GFP_KERNEL);
	if (!dk) {
		err = -ENOMEM;
		goto warn;
	}
	dk->file = get_file(d->file);
	dk->format = d->ops->name;
	dk->level = d->level;
	dk->delta = d;
	err = kobject_init_and_add(&dk->kobj, &ploop_delta_ktype, plo->pdelta,
				   "%d", d->level);
	if (err) {
		kobject_put(&dk->kobj);
		goto warn;
	}
	d->kobj = &dk->kobj;
	return;
warn:
	pr_warn("ploop: %s: pdelta/%d: %d\n", plo->disk->disk_name,
		d->level, err);
}

void ploop_delta_sysfs_del(struct ploop_delta *d)
{
	if (!d->kobj)
		return;
	kobject_del(d->kobj);
	kobject_put(d->kobj);
	d->kobj = NULL;
}


int ploop_sysfs_init(struct ploop_device *plo)
{
	struct kobject *parent = &disk_to_dev(plo->disk)->kobj;
	int err;

	plo->pstate = kobject_create_and_add("pstate", parent);
	if (!plo->pstate)
		return -ENOMEM;
	err = sysfs_create_group(plo->pstate, &ploop_pstate_group);
	if (err)
		goto out_pstate;
	plo->pdelta = kobject_create_and_add("pdelta", parent);
	if (!plo->pdelta) {
		err = -ENOMEM;
		goto out_pstate;
	}
	return 0;

out_pstate:
	kobject_put(plo->pstate);
	plo->pstate = NULL;
	return err;
}

/* The levels go before the disk's directory does (no ioctl runs now). */
void ploop_sysfs_uninit(struct ploop_device *plo)
{
	unsigned int i;

	for (i = 0; i < plo->nr_deltas; i++)
		ploop_delta_sysfs_del(plo->deltas[i]);
	kobject_put(plo->pdelta);
	kobject_put(plo->pstate);
}
