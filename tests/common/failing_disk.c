/*
 * A disk that starts failing, for the reliability suite's failing-disk test
 * (tests/reliability.rs): preloaded into the server (LD_PRELOAD), it makes
 * every write to a regular file and every sync answer EIO while the file
 * named by OTPGATE_FAILING_DISK exists, as a dying disk or a lost network
 * volume does. Sockets, pipes and standard error are left alone.
 *
 * Built by the test with the machine's C compiler; nothing here is part of
 * otpgate.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static int failing(int fd) {
    int saved = errno;
    const char *flag = getenv("OTPGATE_FAILING_DISK");
    struct stat st;
    int fail = fd > 2 && flag != NULL && stat(flag, &st) == 0 && fstat(fd, &st) == 0 &&
               S_ISREG(st.st_mode);
    errno = saved;
    return fail;
}

#define REAL(name) real_##name
#define LOOKUP(name)                                   \
    if (REAL(name) == NULL) {                          \
        REAL(name) = dlsym(RTLD_NEXT, #name);          \
    }
#define FAIL_IF_FAILING(fd)                            \
    if (failing(fd)) {                                 \
        errno = EIO;                                   \
        return -1;                                     \
    }

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_sync_file_range)(int, off64_t, off64_t, unsigned int);

ssize_t write(int fd, const void *buf, size_t n) {
    LOOKUP(write);
    FAIL_IF_FAILING(fd);
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t at) {
    LOOKUP(pwrite);
    FAIL_IF_FAILING(fd);
    return real_pwrite(fd, buf, n, at);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t at) {
    LOOKUP(pwrite64);
    FAIL_IF_FAILING(fd);
    return real_pwrite64(fd, buf, n, at);
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
    LOOKUP(writev);
    FAIL_IF_FAILING(fd);
    return real_writev(fd, iov, count);
}

ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t at) {
    LOOKUP(pwritev);
    FAIL_IF_FAILING(fd);
    return real_pwritev(fd, iov, count, at);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int count, off64_t at) {
    LOOKUP(pwritev64);
    FAIL_IF_FAILING(fd);
    return real_pwritev64(fd, iov, count, at);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int count, off_t at, int flags) {
    LOOKUP(pwritev2);
    FAIL_IF_FAILING(fd);
    return real_pwritev2(fd, iov, count, at, flags);
}

int fsync(int fd) {
    LOOKUP(fsync);
    FAIL_IF_FAILING(fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    LOOKUP(fdatasync);
    FAIL_IF_FAILING(fd);
    return real_fdatasync(fd);
}

int sync_file_range(int fd, off64_t at, off64_t n, unsigned int flags) {
    LOOKUP(sync_file_range);
    FAIL_IF_FAILING(fd);
    return real_sync_file_range(fd, at, n, flags);
}
