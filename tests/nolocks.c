/* LD_PRELOAD shim: a file system without locks (NFS without lockd, Lustre mounted without
 * flock). Every flock() and every fcntl() lock request fails with ENOLCK ("No locks
 * available"), as there; all other fcntl() commands pass through. Built by tests/test_faults_io.py:
 *   cc -shared -fPIC -o nolocks.so nolocks.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/file.h>

int flock(int fd, int operation) {
    (void)fd;
    (void)operation;
    errno = ENOLCK;
    return -1;
}

int fcntl(int fd, int cmd, ...) {
    static int (*real_fcntl)(int, int, ...) = 0;
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *); /* int or pointer: both fit a register on x86-64/aarch64 */
    va_end(ap);
    if (cmd == F_SETLK || cmd == F_SETLKW || cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW) {
        errno = ENOLCK;
        return -1;
    }
    if (!real_fcntl) real_fcntl = (int (*)(int, int, ...))dlsym(RTLD_NEXT, "fcntl");
    return real_fcntl(fd, cmd, arg);
}
