/* The machine's floor for one delivery: CPU time of one 100-byte write(2) on a loopback TCP
 * connection whose peer reads in another process (one core each, like the benchmarks).
 *   cc -O2 -o /tmp/loopback_write bench/floor/loopback_write.c
 *   /tmp/loopback_write [writes]      # prints the writer's CPU µs per write, and wall µs */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof s, &s);
}

static double secs(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000;
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &len)) {
    perror("listen");
    return 1;
  }
  pid_t child = fork();
  if (child == 0) {
    pin(1);
    int c = accept(l, NULL, NULL);
    char buf[65536];
    while (read(c, buf, sizeof buf) > 0) {
    }
    return 0;
  }
  pin(0);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(s, (struct sockaddr *)&a, sizeof a)) {
    perror("connect");
    return 1;
  }
  char msg[100];
  memset(msg, 'x', sizeof msg);
  struct rusage r0, r1;
  struct timeval w0, w1;
  getrusage(RUSAGE_SELF, &r0);
  gettimeofday(&w0, NULL);
  for (long i = 0; i < n; i++) {
    if (write(s, msg, sizeof msg) != sizeof msg) {
      perror("write");
      return 1;
    }
  }
  gettimeofday(&w1, NULL);
  getrusage(RUSAGE_SELF, &r1);
  close(s);
  waitpid(child, NULL, 0);
  double cpu = secs(r1.ru_utime) - secs(r0.ru_utime) + secs(r1.ru_stime) - secs(r0.ru_stime);
  printf("{\"writes\": %ld, \"cpu_us_per_write\": %.3f, \"wall_us_per_write\": %.3f}\n", n, cpu * 1e6 / n,
         (secs(w1) - secs(w0)) * 1e6 / n);
  return 0;
}
