// SPDX-License-Identifier: GPL-2.0
/*
 * io.c - a delta file's I/O.  vz7 has engines for it (io_direct.c,
 * io_kaio.c); the model reads and writes the file through the page cache
 * with kernel_read/kernel_write, in the device's worker.
 */

#include <linux/fs.h>

#include "ploop.h"

int ploop_file_read(struct file *file, void *buf, size_t len, loff_t pos)
{
	while (len) {
		ssize_t n = kernel_read(file, buf, len, &pos);

		if (n < 0)
			return n;
		if (n == 0) {		/* short file: the rest reads as zeros */
			memset(buf, 0, len);
			return 0;
		}
		buf += n;
		len -= n;
	}
	return 0;
}

int ploop_file_write(struct file *file, const void *buf, size_t len,
		     loff_t pos)
{
	while (len) {
		ssize_t n = kernel_write(file, buf, len, &pos);

		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;
		buf += n;
		len -= n;
	}
	return 0;
}
